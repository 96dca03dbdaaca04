"""Vocabulary layout: the MoST preset's exact ids, tokenizer layouts, unit and modality maps."""

import numpy as np
import pytest

from most_jax.config import ModelConfig, VocabConfig, config_from_dict
from most_jax.vocab import AUDIO, NO_GROUP, TEXT, VocabError, VocabLayout


def test_most_preset_reproduces_the_original_ids():
    layout = VocabLayout.most()
    c = layout.config
    assert (c.text_size, c.bos_id, c.eos_id, c.pad_id) == (100002, 100000, 100001, 100001)
    assert (c.audio_unit_offset, c.num_audio_units) == (100002, 500)
    assert (c.begin_audio_id, c.end_audio_id, c.begin_wave_id, c.end_wave_id) == (100502, 100503, 100504, 100505)
    assert layout.vocab_size == 102400
    # ... and equals the model's default vocabulary section.
    assert c == VocabConfig() and layout.vocab_size == ModelConfig().vocab_size


def test_most_preset_modalities_match_the_original_rule():
    layout = VocabLayout.most()
    ids = np.array([0, 99999, 100000, 100001, 100002, 100501, 100502, 100503, 100504, 100505, 102399])
    expected = [TEXT, TEXT, TEXT, TEXT, AUDIO, AUDIO, AUDIO, AUDIO, NO_GROUP, NO_GROUP, NO_GROUP]
    np.testing.assert_array_equal(layout.modality(ids), expected)


def test_layout_after_a_tokenizer_without_specials():
    layout = VocabLayout.after_text(510, 100)  # the layout configs/most_tiny.yaml spells out
    c = layout.config
    assert (c.text_size, c.bos_id, c.eos_id, c.pad_id, c.audio_unit_offset) == (512, 510, 511, 511, 512)
    assert (c.begin_audio_id, c.end_audio_id, c.begin_wave_id, c.end_wave_id) == (612, 613, 614, 615)
    assert layout.vocab_size == 640  # 616 used ids rounded up to a multiple of 64
    tiny = config_from_dict({"model": {"vocab_size": 640, "vocab": layout.to_dict()["vocab"]}})
    assert tiny.model.vocab == c


def test_layout_keeps_a_tokenizers_own_bos_eos():
    layout = VocabLayout.after_text(1000, 7, bos_id=1, eos_id=2, multiple=8)
    c = layout.config
    assert (c.bos_id, c.eos_id, c.text_size, c.audio_unit_offset, c.end_wave_id) == (1, 2, 1000, 1000, 1010)
    assert layout.vocab_size == 1016


def test_units_round_trip_and_range_errors():
    layout = VocabLayout.after_text(37, 11, multiple=1)
    units = np.array([0, 5, 10, 3])
    tokens = layout.units_to_tokens(units)
    np.testing.assert_array_equal(tokens, units + 39)
    np.testing.assert_array_equal(layout.tokens_to_units(tokens), units)
    assert layout.modality(tokens).tolist() == [AUDIO] * 4
    with pytest.raises(VocabError, match="unit id 11"):
        layout.units_to_tokens([3, 11])
    with pytest.raises(VocabError, match="token 37 is not an audio unit"):
        layout.tokens_to_units([40, layout.bos_id])


def test_is_text_excludes_specials_and_units():
    layout = VocabLayout.after_text(37, 11, multiple=1)
    ids = np.array([0, 36, layout.bos_id, layout.eos_id, 39, layout.begin_audio_id])
    assert layout.is_text(ids).tolist() == [True, True, False, False, False, False]


def test_layout_dict_round_trip_and_bad_size():
    layout = VocabLayout.after_text(300, 20)
    assert VocabLayout.from_dict(layout.to_dict()) == layout
    with pytest.raises(VocabError, match="smaller than"):
        VocabLayout.after_text(300, 20, vocab_size=310)
    with pytest.raises(VocabError, match="smaller than"):
        VocabLayout.from_dict({**layout.to_dict(), "vocab_size": 320})
    with pytest.raises(VocabError, match="malformed"):
        VocabLayout.from_dict({"vocab": {}})
