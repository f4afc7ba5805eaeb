"""LLM calls captured directly: `instrument_openai()` and `instrument_anthropic()`.

One instrumented SDK call becomes one neutral `Span` carrying the OpenTelemetry GenAI
attributes, delivered as a log through the same span-to-log mapping the server's OTLP ingest
uses, so a call looks the same whichever route it took. Modules:
- `_call`: one logical call (request snapshot, attempts, response, stream, end) and its span;
- `_hooks`: the patches on the SDKs' shared (Stainless-generated) client and stream classes;
- `_openai_wire`, `_anthropic_wire`: wire JSON (request, body, stream chunks) to attributes;
- `_openai`, `_anthropic`: which resource methods are wrapped, and the public functions.
"""
