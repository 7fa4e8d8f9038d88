"""After a run: merge, GGUF and adapter writing, the Modelfile, llama.cpp verification and K-quants, and the
comparison of export choices. The top core layer: may import every other core package."""
