"""LM backends: one interface (base.LMBackend), implementations side by side.

* transformers_backend — the Hugging Face path (CPU or CUDA), KV-cache reuse (kv_cache);
* fast_cpu — the same with its one-token steps through llama_step (q4: 4-bit kernels);
  fast_cpu.backend_for_model picks it for a plain float32 Llama on CPU;
* vllm_backend — GPU serving (extra `gpu`);
* fake — scripted and garbage backends for tests.
"""

from ranking.backends.base import Generation, LMBackend

__all__ = ["Generation", "LMBackend"]
