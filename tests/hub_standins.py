"""Local stand-ins for the hub datasets (no network at test time), shared by the data and evaluation tests."""


def standin_hub(calls: list):
    """Local stand-ins with the hub datasets' real schemas (datasets.Dataset): every split of every paper
    dataset has distinct, tagged rows, so a test can tell which split and which documents a loader used."""
    from datasets import Dataset

    def fake_load(path, name=None, *, split, **kwargs):
        calls.append((path, name, split, kwargs))
        if path == "Salesforce/wikitext":
            assert name == "wikitext-2-raw-v1"
            return Dataset.from_dict({"text": [f" {split}-wiki-{i} words here .\n" for i in range(50)]})
        if path == "ptb-text-only/ptb_text_only":
            assert name == "penn_treebank" and kwargs.get("revision") == "refs/convert/parquet"
            return Dataset.from_dict({"sentence": [f"{split}-ptb-{i} a b c" for i in range(50)]})
        assert path == "allenai/c4" and name is None
        n = 1200 if split == "validation" else 30
        texts = [f"{split}-c4-{i:04d} " + "lorem ipsum dolor sit amet " * 12 for i in range(n)]
        return Dataset.from_dict({"text": texts, "timestamp": ["2019-04-25T00:00:00Z"] * n,
                                  "url": [f"https://example.org/{i}" for i in range(n)]})

    return fake_load
