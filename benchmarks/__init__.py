"""Speed and quality benchmarks (tables on stdout, JSON in benchmarks/results/); not tests."""
