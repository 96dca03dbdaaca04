"""The built-in speech corpus as a TFDS dataset, `most_speech`, so `tfds.data_source` serves it.

Importing this module registers the builder. Preparing it synthesises the corpus with eSpeak
(`most_jax.corpus.synth`, sized and seeded by the builder config), or reads an existing corpus
directory (the output of `most data synth`) given as TFDS's manual dir:

    import most_jax.data.tfds_builder
    source = tfds.data_source("most_speech/tiny", split="train")       # synthesised, 40 utterances
    builder = tfds.builder("most_speech", config="default")
    builder.download_and_prepare(file_format="array_record",
                                 download_config=tfds.download.DownloadConfig(manual_dir=CORPUS_DIR))

Examples: {"id", "audio" (16 kHz int16 samples), "text", "speaker", "duration"}; splits
train/dev/test.
`most data prepare --tfds most_speech/tiny:train` turns a split into training records.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import soundfile as sf
import tensorflow_datasets as tfds

from most_jax.speech.manifest import read_manifest

SAMPLE_RATE = 16000
SPLITS = ("train", "dev", "test")


@dataclasses.dataclass
class MostSpeechConfig(tfds.core.BuilderConfig):
    num_utterances: int = 2000
    corpus_seed: int = 0
    num_text_lm: int = 2000


class MostSpeech(tfds.core.GeneratorBasedBuilder):
    """eSpeak NG speech of generated sentences, several voices, pitches and rates."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        MostSpeechConfig(name="default", description="2000 utterances (about 1.4 h), seed 0"),
        MostSpeechConfig(name="tiny", description="40 utterances, seed 0 (tests)", num_utterances=40,
                         num_text_lm=50),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Optional: a directory written by `most data synth`; without one the corpus is "
                                    "synthesised from the builder config.")

    def __init__(self, *, file_format=None, **kwargs):
        # ArrayRecord by default: it is what tfds.data_source reads, and TFRecord needs TensorFlow.
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "id": tfds.features.Text(),
                # A plain tensor: tfds.features.Audio needs TensorFlow, which most_jax does not install.
                "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16,
                                              doc=f"16-bit PCM at {SAMPLE_RATE} Hz"),
                "text": tfds.features.Text(),
                "speaker": tfds.features.Text(),
                "duration": np.float32,
            }),
            supervised_keys=("audio", "text"),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        corpus = self._corpus_dir(dl_manager)
        return {split: self._generate_examples(corpus / f"{split}.jsonl") for split in SPLITS}

    def _corpus_dir(self, dl_manager) -> Path:
        try:
            manual = Path(dl_manager.manual_dir)
        except AssertionError:  # no manual dir configured
            manual = None
        if manual is not None and (manual / "train.jsonl").is_file():
            return manual
        from most_jax.corpus.synth import synthesize_corpus

        config = self.builder_config
        corpus = Path(dl_manager.download_dir) / f"most_speech-{config.num_utterances}-{config.corpus_seed}"
        if not (corpus / "train.jsonl").is_file():
            synthesize_corpus(corpus, config.num_utterances, seed=config.corpus_seed, num_text_lm=config.num_text_lm,
                              overwrite=corpus.exists())
        return corpus

    def _generate_examples(self, manifest: Path):
        for entry in read_manifest(manifest):
            audio, rate = sf.read(entry["audio"], dtype="int16")
            if rate != SAMPLE_RATE or audio.ndim != 1:
                raise ValueError(f"{entry['audio']}: expected 16 kHz mono, got {rate} Hz, shape {audio.shape}")
            yield entry["id"], {"id": entry["id"], "audio": audio, "text": entry["text"],
                                "speaker": str(entry.get("speaker", "")), "duration": len(audio) / SAMPLE_RATE}
