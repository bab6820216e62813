$py benchmarks/long_context.py --out "$out/long_context.md"
