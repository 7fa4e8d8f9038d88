"""`llamaforge inspect SOURCE`: load a model source and report what was loaded, how fast, and how big.

With ``--prompt`` it also runs one forward pass and prints the five most likely next tokens, a quick check that the
weights, the tokenizer and the architecture all line up (garbage here means a broken conversion).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from llamaforge_tui.commands.common import add_json_flag, print_json, settings_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="load a model source and show its architecture, size, load time and memory",
        description="Load SOURCE (ollama:NAME[:TAG], hf:ORG/NAME[@REV], a .gguf file or a model folder) "
        "and report the architecture, dtype, parameter count, load time and peak memory.",
    )
    parser.add_argument("source", metavar="SOURCE")
    parser.add_argument("--weights", choices=("gguf", "hf", "gguf-quantized"), default="gguf",
                        help="where an Ollama/GGUF source's weights come from (default: gguf)")
    parser.add_argument("--prompt", default=None, metavar="TEXT", help="show the top-5 next tokens after TEXT")
    parser.add_argument("--dtype", default="auto", help="auto (default), float32, bfloat16 or float16")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    add_json_flag(parser)
    parser.set_defaults(func=run)


def top_next_tokens(model: Any, tokenizer: Any, prompt: str, k: int = 5) -> list[dict[str, Any]]:
    import torch

    device = next(model.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
    with torch.no_grad():
        logits = model(ids).logits[0, -1].float()
    values, indices = torch.topk(logits, k)
    return [
        {"id": int(i), "text": tokenizer.decode([int(i)]), "logit": round(float(v), 4)}
        for v, i in zip(values.tolist(), indices.tolist())
    ]


def run(args: argparse.Namespace) -> int:
    from llamaforge_tui.core.model.loading import load_model
    from llamaforge_tui.core.model.memory import fmt_bytes, peak_rss_bytes

    settings = settings_from_args(args)
    start = time.perf_counter()
    loaded = load_model(args.source, settings, weights=args.weights, dtype=args.dtype, device=args.device)
    load_seconds = time.perf_counter() - start
    desc = loaded.description
    result: dict[str, Any] = {
        "architecture": desc.architecture,
        "dtype": desc.dtype,
        "device": desc.device,
        "parameter_count": desc.parameter_count,
        "load_seconds": round(load_seconds, 3),
        "peak_rss_bytes": peak_rss_bytes(),
        "source": desc.to_dict(),
    }
    if desc.device.startswith("cuda"):
        import torch

        result["peak_gpu_bytes"] = int(torch.cuda.max_memory_allocated())
    if args.prompt is not None:
        result["next_token_top5"] = top_next_tokens(loaded.model, loaded.tokenizer, args.prompt)
    if args.json:
        print_json(result)
        return 0
    lines = [
        f"source        {desc.source} ({desc.kind}, weights {desc.weights})",
        f"architecture  {desc.architecture}",
        f"file type     {desc.gguf_file_type}" if desc.gguf_file_type else None,
        f"parameters    {desc.parameter_count:,}",
        f"dtype         {desc.dtype} on {desc.device}",
        f"load time     {load_seconds:.2f} s",
        f"peak memory   {fmt_bytes(result['peak_rss_bytes'])} RSS"
        + (f", {fmt_bytes(result['peak_gpu_bytes'])} GPU" if "peak_gpu_bytes" in result else ""),
        f"chat template {desc.template_origin}" + (" (+ Ollama template)" if desc.ollama_template else ""),
    ]
    print("\n".join(line for line in lines if line))
    if args.prompt is not None:
        print(f"next token after {args.prompt!r}:")
        for row in result["next_token_top5"]:
            print(f"  {row['id']:>8}  {row['logit']:>9.3f}  {row['text']!r}")
    return 0
