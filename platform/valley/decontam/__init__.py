"""`valley decontam`: n-gram, title and URL overlap between training questions and evaluation problems,
reported per subset, contaminated traces optionally dropped (counted as rejects)."""
