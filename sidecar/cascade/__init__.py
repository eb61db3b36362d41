"""Model cascading: the answer evaluator that decides whether a cheap answer ships."""
