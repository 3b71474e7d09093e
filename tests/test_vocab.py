"""SALT and its baselines (clo_lib.method.salt) against hand-computed small cases and independent computations."""

import math

import numpy as np
import pytest
import torch

from clo_lib.method.salt import init_embeddings, salt_embeddings, sparsemax

NAN = float("nan")


def small_case():
    """New vocabulary of 5: tokens 0 and 1 shared (LLM ids 5 and 7), 2 and 3 new with auxiliary vectors, 4 new
    without one. h_t = 2, h_s = 3."""
    source = torch.zeros(8, 3, dtype=torch.float64)
    source[5], source[7] = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 5.0, 6.0])
    donor = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 3.0], [3.0, 5.0], [1.0, 1.0]], dtype=torch.float64)
    aux = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -0.5], [NAN, NAN]], dtype=torch.float64)
    return source, donor, aux, {0: 5, 1: 7}


def test_sparsemax_matches_its_closed_form():
    # z = (1, 0.5, -1): support {1, 0.5}, tau = (1.5 - 1) / 2 = 0.25
    assert sparsemax(torch.tensor([1.0, 0.5, -1.0])).tolist() == [0.75, 0.25, 0.0]
    assert sparsemax(torch.tensor([0.9, -0.2])).tolist() == pytest.approx([1.0, 0.0])  # a gap over 1: one left


def test_salt_copies_shared_rows_and_maps_the_others_through_their_neighbours():
    source, donor, aux, shared = small_case()
    out = salt_embeddings(source, donor, aux, shared, generator=torch.Generator().manual_seed(0))
    assert out[0].tolist() == [1.0, 2.0, 3.0] and out[1].tolist() == [4.0, 5.0, 6.0]
    # token 2: cos 1/sqrt(2) to both shared tokens -> weights (0.5, 0.5), K = {0, 1}; E_t[K] = I, so X = E_s[K]
    # and the row is (2, 3) . [[1, 2, 3], [4, 5, 6]] = (14, 19, 24)
    assert out[2].tolist() == pytest.approx([14.0, 19.0, 24.0])
    # token 3: cosines 0.894 and -0.447 differ by more than 1 -> K = {0}; pinv([[1, 0]]) = [[1], [0]], so
    # X = [[1, 2, 3], [0, 0, 0]] and the row is (3, 5) . X = (3, 6, 9)
    assert out[3].tolist() == pytest.approx([3.0, 6.0, 9.0])
    assert torch.isfinite(out[4]).all()  # no auxiliary vector: a normal draw


def test_a_ridge_term_shrinks_the_map():
    source, donor, aux, shared = small_case()
    out = salt_embeddings(source, donor, aux, shared, ridge=1.0, generator=torch.Generator().manual_seed(0))
    # E_t[K] = I: X = (I + I)^-1 E_s[K] = E_s[K] / 2, so token 2's row halves
    assert out[2].tolist() == pytest.approx([7.0, 9.5, 12.0])


def test_focus_averages_the_neighbours_llm_rows_with_the_sparsemax_weights():
    source, donor, aux, shared = small_case()
    out = init_embeddings("focus", source, None, aux, shared, generator=torch.Generator().manual_seed(0))
    assert out[2].tolist() == pytest.approx([2.5, 3.5, 4.5]) and out[3].tolist() == pytest.approx([1.0, 2.0, 3.0])


def test_salt_equals_an_independent_least_squares_on_a_random_case():
    rng = np.random.default_rng(0)
    source = torch.tensor(rng.normal(size=(40, 6)))
    donor = torch.tensor(rng.normal(size=(30, 4)))
    aux = torch.tensor(rng.normal(size=(30, 5)))
    shared = {new: new + 10 for new in range(20)}
    out = salt_embeddings(source, donor, aux, shared)
    unit = aux / aux.norm(dim=1, keepdim=True)
    for token in range(20, 30):
        weights = sparsemax(unit[token] @ unit[:20].T).numpy()
        k = np.nonzero(weights)[0]
        x, *_ = np.linalg.lstsq(donor[k].numpy(), source[k + 10].numpy(), rcond=None)  # minimum-norm solution
        assert out[token].numpy() == pytest.approx(donor[token].numpy() @ x, rel=1e-9, abs=1e-9)


def test_tokens_without_auxiliary_vectors_get_the_llm_rows_mean_and_spread():
    rng = np.random.default_rng(1)
    source = torch.tensor(rng.normal(loc=2.0, scale=3.0, size=(500, 4)))
    aux = torch.full((4002, 3), NAN, dtype=torch.float64)
    aux[0], aux[1] = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    donor = torch.ones(4002, 2, dtype=torch.float64)
    out = salt_embeddings(source, donor, aux, {0: 0, 1: 1}, generator=torch.Generator().manual_seed(0))[2:]
    assert out.mean(0).numpy() == pytest.approx(source.mean(0).numpy(), abs=0.15)
    assert out.std(0).numpy() == pytest.approx(source.std(0).numpy(), rel=0.05)


def test_mean_and_multivariate_baselines_keep_shared_rows_and_follow_the_llm_rows():
    rng = np.random.default_rng(2)
    mixing = np.array([[1.0, 0.8, 0.0], [0.0, 0.6, 0.0], [0.0, 0.0, 2.0]])
    source = torch.tensor(rng.normal(size=(2000, 3)) @ mixing + 1.0)
    aux = torch.zeros(3002, 2, dtype=torch.float64)
    mean = init_embeddings("mean", source, None, aux, {0: 9})
    assert mean[0].tolist() == source[9].tolist() and mean[1:].numpy() == pytest.approx(
        np.tile(source.mean(0).numpy(), (3001, 1)))
    drawn = init_embeddings("multivariate", source, None, aux, {0: 9}, generator=torch.Generator().manual_seed(0))
    assert drawn[0].tolist() == source[9].tolist()
    covariance = np.cov(drawn[1:].numpy().T)
    assert covariance == pytest.approx(np.cov(source.numpy().T), abs=0.12)  # the correlations too
    assert math.isclose(covariance[0, 1], np.cov(source.numpy().T)[0, 1], abs_tol=0.12)


def test_bad_calls_say_what_is_missing():
    source, donor, aux, shared = small_case()
    with pytest.raises(ValueError, match="expected one of salt, focus, mean, multivariate"):
        init_embeddings("ofa", source, donor, aux, shared)
    with pytest.raises(ValueError, match="salt needs both"):
        init_embeddings("salt", source, None, aux, shared)
    with pytest.raises(ValueError, match="no shared token has an auxiliary vector"):
        init_embeddings("focus", source, None, torch.full_like(aux, NAN), shared)


def _tokenizer(kind, texts):
    """A small fast tokenizer of one convention, trained here on `texts`."""
    from tokenizers import SentencePieceBPETokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from tokenizers import Tokenizer as Raw
    from transformers import PreTrainedTokenizerFast

    if kind == "byte_bpe":
        raw = Raw(models.BPE())
        raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        raw.decoder = decoders.ByteLevel()
        raw.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"],
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    elif kind == "sentencepiece":
        raw = SentencePieceBPETokenizer()
        raw.train_from_iterator(texts, vocab_size=120, special_tokens=["<eos>"])
        raw = raw._tokenizer
    else:
        raw = Raw(models.WordPiece(unk_token="[UNK]"))
        raw.normalizer = normalizers.NFC()
        raw.pre_tokenizer = pre_tokenizers.Whitespace()
        raw.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=120, special_tokens=["[UNK]", "[SEP]"]))
    return PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>" if kind != "wordpiece" else "[SEP]")


def test_shared_tokens_match_words_across_tokenizer_conventions():
    from clo_lib.modeling.tokens import canonical, shared_tokens, token_style

    texts = ["die katze sitzt auf der matte", "der hund und die katze", "café über straße"] * 20
    tokenizers = {kind: _tokenizer(kind, texts) for kind in ("byte_bpe", "sentencepiece", "wordpiece")}
    assert {kind: token_style(t.get_vocab()) for kind, t in tokenizers.items()} == {
        "byte_bpe": "byte_bpe", "sentencepiece": "sentencepiece", "wordpiece": "wordpiece"}
    pairs = (("wordpiece", "byte_bpe"), ("sentencepiece", "byte_bpe"), ("wordpiece", "sentencepiece"))
    for new_kind, llm_kind in pairs:
        new, llm = tokenizers[new_kind], tokenizers[llm_kind]
        shared = shared_tokens(new, llm)
        new_vocab, llm_vocab = {i: t for t, i in new.get_vocab().items()}, {i: t for t, i in llm.get_vocab().items()}
        assert shared, (new_kind, llm_kind)
        for new_id, llm_id in shared.items():  # the same text on both sides, by an independent decode
            assert canonical(new_vocab[new_id], new_kind) == canonical(llm_vocab[llm_id], llm_kind)
        # whole words both learnt are matched, word-initial with word-initial, accents through byte-level BPE too
        for word in (" katze", " café", " straße"):
            new_id = {canonical(t, new_kind): i for t, i in new.get_vocab().items()}[word]
            llm_id = {canonical(t, llm_kind): i for t, i in llm.get_vocab().items()}[word]
            assert shared[new_id] == llm_id, word
        assert not set(shared) & {new.convert_tokens_to_ids(t) for t in new.all_special_tokens}  # by role only
    assert canonical("ĠcafÃ©", "byte_bpe") == " café" and canonical("Ã", "byte_bpe") is None
    # two byte-level vocabularies share their alphabet, parts of characters included (Ã: the byte 0xC3)
    other = _tokenizer("byte_bpe", ["ein ganz anderer text"] * 20)
    both = shared_tokens(other, tokenizers["byte_bpe"])
    assert both[other.convert_tokens_to_ids("Ã")] == tokenizers["byte_bpe"].convert_tokens_to_ids("Ã")
    assert "Ã" not in {t for t in tokenizers["wordpiece"].get_vocab()}  # no other style has it to match


def test_auxiliary_vectors_come_from_fasttext_by_token_text_and_are_reproducible(tmp_path):
    from clo_lib.modeling.tokens import aux_embeddings, canonical, train_fasttext
    from clo_lib.toy import world

    texts = [r["prompt_tgt"] + " " + r["answer_tgt"] for r in world.evaluation_prompts("de")]
    corpus = tmp_path / "de.txt"
    corpus.write_text("\n".join(texts))
    tokenizer = _tokenizer("wordpiece", texts)
    vectors = train_fasttext(str(corpus), dim=16, epochs=3)
    aux = aux_embeddings(tokenizer, vectors)
    assert aux.shape == (len(tokenizer.get_vocab()), 16)
    sep = tokenizer.convert_tokens_to_ids("[SEP]")
    assert torch.isnan(aux[sep]).all()  # a special token has none
    for token, index in list(tokenizer.get_vocab().items())[:20]:  # the vector of the token's text, no marks
        if token != "[SEP]":
            text = canonical(token, "wordpiece").strip()
            assert aux[index].numpy() == pytest.approx(vectors[text].astype(np.float64))
    again = aux_embeddings(tokenizer, train_fasttext(str(corpus), dim=16, epochs=3))
    assert torch.equal(torch.nan_to_num(aux), torch.nan_to_num(again))


def test_a_missing_or_empty_text_file_is_one_clear_error(tmp_path):
    from clo_lib.modeling.tokens import load_fasttext, train_fasttext

    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="holds no text"):
        train_fasttext(str(tmp_path / "empty.txt"))
    with pytest.raises(FileNotFoundError, match="expected a fastText .bin file"):
        load_fasttext(str(tmp_path / "cc.de.300.bin"))


def test_salt_diagnostics_count_neighbours_and_conditions_as_numpy_does_and_warn_when_flat():
    """transfer.json records how well posed SALT's fits are; with flat similarities (every auxiliary vector nearly
    the same) k reaches the donor's width and a warning says SALT cannot be tested with these inputs."""
    from clo_lib.method.salt import neighbour_weights, salt_diagnostics, salt_warning

    generator = torch.Generator().manual_seed(0)
    donor = torch.randn(40, 4, dtype=torch.float64, generator=generator)
    shared = {i: i for i in range(30)}
    spread_aux = torch.randn(40, 8, dtype=torch.float64, generator=generator)
    made = torch.arange(30, 40)
    found = salt_diagnostics(donor, spread_aux, shared, made)
    weights = neighbour_weights(spread_aux[made], spread_aux[:30]).numpy()
    ks = (weights > 0).sum(axis=1)
    conditions = [np.linalg.cond(donor[:30].numpy()[w > 0]) for w in weights]
    assert found["tokens"] == 10 and found["k_max"] == ks.max() and found["k_median"] == np.median(ks)
    assert found["condition_median"] == pytest.approx(float(np.median(conditions)))
    assert found["share_k_at_least_width"] == pytest.approx(float((ks >= 4).mean()))
    flat = torch.ones(40, 8, dtype=torch.float64) + 1e-4 * torch.randn(40, 8, dtype=torch.float64, generator=generator)
    flat_found = salt_diagnostics(donor, flat, shared, made)
    assert flat_found["k_median"] >= 4 and flat_found["top_cosine_median"] > 0.999
    assert "too flat" in salt_warning(flat_found)
    assert (salt_warning(found) is None) == (found["k_median"] < 0.8 * 4)
