"""Contract suites: one shared test module per replaceable part (LM backends, retrieval
sources), run over every implementation of that part."""
