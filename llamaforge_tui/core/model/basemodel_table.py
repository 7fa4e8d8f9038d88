"""The maintained table: Ollama library families and sizes -> Hugging Face repos.

Ollama's default tags are the instruct/chat models, so ``instruct`` is the default variant; ``base`` is
used when the tag says ``-base`` or ``-text``. Sizes are approximate download sizes of the safetensors
(bf16, or what the repo ships), for the "needs download (about N GB)" hint only. ``arch`` is the GGUF
``general.architecture`` the entry expects: a mismatch means the table does not describe this file, and
the mapping is refused rather than guessed.

To add a family: one ``_family(...)`` call. Keep repos that exist and load with transformers without
``trust_remote_code``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TableEntry:
    family: str
    size: str  # "7b", "270m", "8x7b"
    params: float  # nominal parameters, in billions (to match an untagged GGUF by its real count)
    arch: str | None
    variants: dict[str, str]  # "instruct" / "base" / "code" / "python" -> repo id
    download_gb: float

    @property
    def download_bytes(self) -> int:
        return int(self.download_gb * 1e9)


@dataclass(frozen=True)
class Family:
    name: str
    default_size: str
    entries: dict[str, TableEntry]
    aliases: dict[str, str]  # tag word -> size ("mini" -> "3.8b")


FAMILIES: dict[str, Family] = {}


def _family(name: str, default: str, arch: str | None, rows: list[tuple[str, float, float, dict[str, str]]],
            aliases: dict[str, str] | None = None) -> None:
    entries = {size: TableEntry(name, size, params, arch, variants, gb) for size, params, gb, variants in rows}
    FAMILIES[name] = Family(name, default, entries, aliases or {})


def _qwen(prefix: str, size: str, base: bool = True) -> dict[str, str]:
    repo = f"Qwen/{prefix}-{size}"
    return {"instruct": f"{repo}-Instruct", **({"base": repo} if base else {})}


# (size, nominal params in B, approx download GB, variants)
_family("qwen2.5", "7b", "qwen2", [
    (s, p, gb, _qwen("Qwen2.5", s.upper())) for s, p, gb in [
        ("0.5b", 0.49, 0.99), ("1.5b", 1.54, 3.09), ("3b", 3.09, 6.17), ("7b", 7.62, 15.2),
        ("14b", 14.7, 29.5), ("32b", 32.8, 65.5), ("72b", 72.7, 145.4)]])
_family("qwen2.5-coder", "7b", "qwen2", [
    (s, p, gb, _qwen("Qwen2.5-Coder", s.upper())) for s, p, gb in [
        ("0.5b", 0.49, 0.99), ("1.5b", 1.54, 3.09), ("3b", 3.09, 6.17), ("7b", 7.62, 15.2),
        ("14b", 14.7, 29.5), ("32b", 32.8, 65.5)]])
_family("qwen2", "7b", "qwen2", [
    (s, p, gb, _qwen("Qwen2", s.upper())) for s, p, gb in [
        ("0.5b", 0.49, 0.99), ("1.5b", 1.54, 3.09), ("7b", 7.62, 15.2), ("72b", 72.7, 145.4)]])
# Qwen3's post-trained checkpoints are named without a suffix; the pre-trained ones end in -Base.
_family("qwen3", "8b", "qwen3", [
    (s, p, gb, {"instruct": f"Qwen/Qwen3-{s.upper()}", "base": f"Qwen/Qwen3-{s.upper()}-Base"}) for s, p, gb in [
        ("0.6b", 0.6, 1.5), ("1.7b", 1.7, 4.1), ("4b", 4.0, 8.1), ("8b", 8.2, 16.4), ("14b", 14.8, 29.5),
        ("32b", 32.8, 65.5)]])
_family("llama3.1", "8b", "llama", [
    ("8b", 8.03, 16.1, {"instruct": "meta-llama/Llama-3.1-8B-Instruct", "base": "meta-llama/Llama-3.1-8B"}),
    ("70b", 70.6, 141.1, {"instruct": "meta-llama/Llama-3.1-70B-Instruct", "base": "meta-llama/Llama-3.1-70B"}),
    ("405b", 406.0, 812.0, {"instruct": "meta-llama/Llama-3.1-405B-Instruct", "base": "meta-llama/Llama-3.1-405B"})])
_family("llama3.2", "3b", "llama", [
    ("1b", 1.24, 2.47, {"instruct": "meta-llama/Llama-3.2-1B-Instruct", "base": "meta-llama/Llama-3.2-1B"}),
    ("3b", 3.21, 6.43, {"instruct": "meta-llama/Llama-3.2-3B-Instruct", "base": "meta-llama/Llama-3.2-3B"})])
_family("llama3.3", "70b", "llama", [
    ("70b", 70.6, 141.1, {"instruct": "meta-llama/Llama-3.3-70B-Instruct"})])
_family("llama3", "8b", "llama", [
    ("8b", 8.03, 16.1, {"instruct": "meta-llama/Meta-Llama-3-8B-Instruct", "base": "meta-llama/Meta-Llama-3-8B"}),
    ("70b", 70.6, 141.1, {"instruct": "meta-llama/Meta-Llama-3-70B-Instruct", "base": "meta-llama/Meta-Llama-3-70B"})])
_family("llama2", "7b", "llama", [
    ("7b", 6.74, 13.5, {"instruct": "meta-llama/Llama-2-7b-chat-hf", "base": "meta-llama/Llama-2-7b-hf"}),
    ("13b", 13.0, 26.0, {"instruct": "meta-llama/Llama-2-13b-chat-hf", "base": "meta-llama/Llama-2-13b-hf"}),
    ("70b", 69.0, 138.0, {"instruct": "meta-llama/Llama-2-70b-chat-hf", "base": "meta-llama/Llama-2-70b-hf"})])
_family("mistral", "7b", "llama", [
    ("7b", 7.25, 14.5, {"instruct": "mistralai/Mistral-7B-Instruct-v0.3", "base": "mistralai/Mistral-7B-v0.3"})])
_family("mistral-nemo", "12b", "llama", [
    ("12b", 12.2, 24.5, {"instruct": "mistralai/Mistral-Nemo-Instruct-2407", "base": "mistralai/Mistral-Nemo-Base-2407"})])
_family("mixtral", "8x7b", "llama", [
    ("8x7b", 46.7, 93.4, {"instruct": "mistralai/Mixtral-8x7B-Instruct-v0.1", "base": "mistralai/Mixtral-8x7B-v0.1"})])
_family("gemma", "7b", "gemma", [
    ("2b", 2.51, 5.0, {"instruct": "google/gemma-2b-it", "base": "google/gemma-2b"}),
    ("7b", 8.54, 17.1, {"instruct": "google/gemma-7b-it", "base": "google/gemma-7b"})])
_family("gemma2", "9b", "gemma2", [
    ("2b", 2.61, 5.2, {"instruct": "google/gemma-2-2b-it", "base": "google/gemma-2-2b"}),
    ("9b", 9.24, 18.5, {"instruct": "google/gemma-2-9b-it", "base": "google/gemma-2-9b"}),
    ("27b", 27.2, 54.5, {"instruct": "google/gemma-2-27b-it", "base": "google/gemma-2-27b"})])
_family("gemma3", "4b", "gemma3", [
    ("270m", 0.268, 0.54, {"instruct": "google/gemma-3-270m-it", "base": "google/gemma-3-270m"}),
    ("1b", 1.0, 2.0, {"instruct": "google/gemma-3-1b-it", "base": "google/gemma-3-1b-pt"}),
    ("4b", 4.3, 8.6, {"instruct": "google/gemma-3-4b-it", "base": "google/gemma-3-4b-pt"}),
    ("12b", 12.2, 24.4, {"instruct": "google/gemma-3-12b-it", "base": "google/gemma-3-12b-pt"}),
    ("27b", 27.4, 54.9, {"instruct": "google/gemma-3-27b-it", "base": "google/gemma-3-27b-pt"})])
_family("phi3", "3.8b", "phi3", [
    ("3.8b", 3.82, 7.6, {"instruct": "microsoft/Phi-3-mini-4k-instruct"}),
    ("14b", 14.0, 28.0, {"instruct": "microsoft/Phi-3-medium-4k-instruct"})],
    aliases={"mini": "3.8b", "medium": "14b"})
_family("phi3.5", "3.8b", "phi3", [
    ("3.8b", 3.82, 7.6, {"instruct": "microsoft/Phi-3.5-mini-instruct"})])
_family("phi4", "14b", "phi3", [
    ("14b", 14.7, 29.3, {"instruct": "microsoft/phi-4"})])
_family("phi4-mini", "3.8b", "phi3", [
    ("3.8b", 3.84, 7.7, {"instruct": "microsoft/Phi-4-mini-instruct"})])
_family("tinyllama", "1.1b", "llama", [
    ("1.1b", 1.1, 2.2, {"instruct": "TinyLlama/TinyLlama-1.1B-Chat-v1.0"})])
_family("codellama", "7b", "llama", [
    (s, p, gb, {"instruct": f"codellama/CodeLlama-{s}-Instruct-hf", "code": f"codellama/CodeLlama-{s}-hf",
                "python": f"codellama/CodeLlama-{s}-Python-hf"}) for s, p, gb in [
        ("7b", 6.74, 13.5), ("13b", 13.0, 26.0), ("34b", 33.7, 67.5), ("70b", 69.0, 138.0)]])
_family("smollm2", "1.7b", "llama", [
    ("135m", 0.135, 0.27, {"instruct": "HuggingFaceTB/SmolLM2-135M-Instruct", "base": "HuggingFaceTB/SmolLM2-135M"}),
    ("360m", 0.362, 0.72, {"instruct": "HuggingFaceTB/SmolLM2-360M-Instruct", "base": "HuggingFaceTB/SmolLM2-360M"}),
    ("1.7b", 1.71, 3.42, {"instruct": "HuggingFaceTB/SmolLM2-1.7B-Instruct", "base": "HuggingFaceTB/SmolLM2-1.7B"})])
_family("deepseek-r1", "8b", None, [
    ("1.5b", 1.78, 3.55, {"instruct": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"}),
    ("7b", 7.62, 15.2, {"instruct": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"}),
    ("8b", 8.19, 16.4, {"instruct": "deepseek-ai/DeepSeek-R1-0528-Qwen3-8B"}),
    ("14b", 14.8, 29.5, {"instruct": "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B"}),
    ("32b", 32.8, 65.5, {"instruct": "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B"}),
    ("70b", 70.6, 141.1, {"instruct": "deepseek-ai/DeepSeek-R1-Distill-Llama-70B"})])

# Per-entry architecture where a family mixes them (deepseek-r1 distills are qwen2 or llama).
ARCH_OVERRIDES: dict[tuple[str, str], str] = {
    ("deepseek-r1", "1.5b"): "qwen2", ("deepseek-r1", "7b"): "qwen2", ("deepseek-r1", "8b"): "qwen3", ("deepseek-r1", "14b"): "qwen2",
    ("deepseek-r1", "32b"): "qwen2", ("deepseek-r1", "70b"): "llama",
}
# Tag words that pick a variant; "text" is Ollama's word for the pre-trained (base) model.
VARIANT_WORDS = {"instruct": "instruct", "chat": "instruct", "it": "instruct", "base": "base", "text": "base",
                 "pt": "base", "code": "code", "python": "python"}
