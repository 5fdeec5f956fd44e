"""Layer 5: what leaves the library (export directory with its model card, GGUF for llama.cpp, report and plots)."""
