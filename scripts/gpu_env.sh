# Sourced by the scripts/gpu_*.sh scripts after they set OUT: the output folder, the interpreter, the offline
# environment, and the zoo entries of a bare copy (no `pip install -e .`) through a `mmdiff/zoo_entries` link, as the
# install provides them.
mkdir -p "$OUT"
PY=${PY:-python3}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
$PY -c "import mmdiff.zoo_entries" 2>/dev/null || ln -sfn ../zoo mmdiff/zoo_entries
