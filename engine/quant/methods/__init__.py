"""The quantization methods, one module each (the formulas of GPTQ, QEP and distillation beside them).

Each implementation registers itself with @register (engine/quant/registry.py), which maps a method name to
its config class and per-layer quantizer; look methods up with registry.get_method, never by importing here.
"""
