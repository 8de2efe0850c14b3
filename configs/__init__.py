"""The training recipes, shipped inside the package as `mmdiff.configs`.

One YAML file per recipe, grouped by task (`toy/`, `text/`, `reasoning/`, `vlm/`, `t2i/`). `mmdiff train` and
`mmdiff.train.load_train_config` take a file path or a shipped recipe's path under `configs/` (or its bare name),
so the zoo cards' `mmdiff train configs/...yaml` commands run from an installed wheel as from a clone.
"""
