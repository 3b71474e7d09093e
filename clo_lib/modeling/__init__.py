"""Layer 4: models as the stages need them: loading (HF, GGUF, Unsloth), precision, trainable parts, saving;
batches, response log-probs, the shared trainer, memory estimates, token matching, tiny test models, packaged models.
"""
