"""`valley import`: generations written by other harnesses (lcb_runner, SkyThought, plain JSONL) as a
samples table that grade and report consume unchanged, official verdicts carried alongside."""
