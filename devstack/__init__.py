"""The local stack for development, tests and `make demo`: a Kafka broker and a Spark standalone cluster
as plain processes, their process helpers, and the demo's orchestration.

Not part of the product: it is left out of the wheel and the `--py-files` zip, and nothing in `flo_seg`,
`batch`, `streaming` or `schemas` imports it. It may import them.
"""
