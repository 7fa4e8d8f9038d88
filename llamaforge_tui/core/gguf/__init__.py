"""The GGUF file format: a bounded reader and summary, the writer, the tokenizer built from GGUF metadata,
quant kernels and per-architecture tensor facts. The bottom layer: imports only the shared core modules."""
