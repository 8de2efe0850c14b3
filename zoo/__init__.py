"""The mmdiff zoo entries, shipped inside the package as `mmdiff.zoo_entries`.

One folder per entry: `<name>/card.yaml` and, for entries trained by this project, the checkpoint folder files
beside it (`config.json`, `model.safetensors`, `sampler_config.json`, tokenizer files, `README.md`). `mmdiff.zoo`
finds them with `importlib.resources`, so they load the same from a source checkout and from an installed wheel.
"""
