"""Data for every floor above: corpora and their token caches (``corpora``), tokenizers
(``tokenizer``), the devdocs extractor (``devdocs``) and the embedded corpora and models fetched on
first use (``embedded``, ``fetch``)."""
