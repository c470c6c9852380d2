"""Export a trained adapter as a plain Hugging Face model folder, for serving or publishing.

    python export.py --run runs/demo --out exports/demo                 # the run's final adapter
    python export.py --run runs/demo --checkpoint 100 --out exports/s100
    python export.py --run runs/demo --adapter path/to/adapter --out exports/x

The folder holds the LoRA-merged weights (safetensors), config.json, the processor (tokenizer, image
processor with the run's min/max_pixels, chat template) and a generation_config.json with the run's
sampling defaults (temperature, top_p, max_new_tokens, the stop ids, the suppressed tokens: the vision ones
and, with ``sampling.ascii_only``, the non-ASCII ones). It loads with
``Qwen2_5_VLForConditionalGeneration.from_pretrained(DIR)`` and, where torchvision is installed,
``AutoProcessor.from_pretrained(DIR)``; servers that read a model folder (vLLM, TGI) take it as it is.

A top-level command like train.py and evaluate.py: it reads a run folder (grpo.config, evaluation.generate)
besides model/, which may import neither.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from transformers import GenerationConfig

from data.files import atomic_dir
from evaluation.generate import resolve_adapter
from grpo.run_dir import read_run_config, run_config_file
from model.lora import merge_and_save

log = logging.getLogger("export")
PROVENANCE_FILE = "mrg_grpo_export.json"


def sampling_generation_config(model, tokenizer, sampling) -> GenerationConfig:
    """The run's sampling section (``SamplingConfig.params``: its stop and suppressed ids included) as a
    GenerationConfig: what ``generate()`` and servers use by default.

    Greedy decoding (what evaluate.py reports) is ``do_sample=False`` at call time."""
    params = sampling.params(model, tokenizer)
    return GenerationConfig(
        do_sample=True,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=0,
        max_new_tokens=params.max_new_tokens,
        eos_token_id=list(params.stop_ids),
        pad_token_id=params.pad_id,
        bos_token_id=tokenizer.bos_token_id,
        suppress_tokens=list(params.suppress_ids),
    )


def checkpoint_dtype(model_path: str | Path) -> str:
    """The dtype the base checkpoint was saved in (config.json), so the export keeps its size."""
    config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    dtype = config.get("dtype") or config.get("torch_dtype") or config.get("text_config", {}).get("dtype")
    return dtype or "float32"


def _readable_like_other_files(folder: Path) -> None:
    """transformers writes weight shards owner-only (0600); give them the mode any new file gets, so a
    server running as another user can read the export."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)


def export_merged(
    run_dir: str | Path,
    out_dir: str | Path,
    adapter_dir: str | Path,
    dtype: str | None = None,
    device: str = "cpu",
) -> Path:
    """Merge ``adapter_dir`` into the run's base model and write the folder ``out_dir`` (atomically)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"--out {out_dir} exists and is not empty; choose another folder or remove it")
    cfg = read_run_config(run_dir)
    m = cfg.model
    dtype = dtype or (m.dtype if m.dtype != "auto" else checkpoint_dtype(m.path))
    peft_model, processor = m.load_trained(device, adapter_dir, dtype=dtype, merge=False)
    base = peft_model.get_base_model()
    base.generation_config = sampling_generation_config(base, processor.tokenizer, cfg.sampling)

    provenance = {
        "run": str(run_dir.resolve()),
        "adapter": str(Path(adapter_dir).resolve()),
        "base_model": str(Path(m.path).resolve()),
        "dtype": str(dtype),
        "min_pixels": m.min_pixels,
        "max_pixels": m.max_pixels,
    }
    with atomic_dir(out_dir, tmp=out_dir.with_name(out_dir.name + ".tmp")) as tmp:  # out_dir: absent or empty
        merge_and_save(peft_model, tmp, processor)
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
        _readable_like_other_files(tmp)
    log.info("exported %s merged into %s -> %s", adapter_dir, m.path, out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python export.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run", required=True, type=Path, metavar="RUNDIR", help="a training run folder")
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--checkpoint", type=int, metavar="STEP", help="a checkpoint's adapter (default: final)"
    )
    which.add_argument(
        "--adapter", type=Path, metavar="DIR", help="any adapter folder trained on the run's base"
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="the folder to write")
    parser.add_argument("--dtype", help="weights dtype (default: the run's model.dtype, else the base's own)")
    parser.add_argument("--device", default="cpu", help="where to merge (cpu | cuda; default cpu)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_config_file(args.run)
        if args.adapter is not None:
            adapter = args.adapter
        else:
            adapter = resolve_adapter(args.run, args.checkpoint, no_adapter=False)
        out = export_merged(args.run, args.out, adapter, dtype=args.dtype, device=args.device)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported {adapter} -> {out}")
    for path in sorted(out.iterdir()):
        print(f"  {path.name:<32} {path.stat().st_size:>14,d} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
