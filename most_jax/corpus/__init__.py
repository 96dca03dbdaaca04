"""The built-in speech corpus: a sentence generator over word lists (lexicon, sentences) spoken by
eSpeak NG (espeak) into a manifest + audio directory (synth). Its word lists are data files in
most_jax/corpus/data/, shipped with the package."""
