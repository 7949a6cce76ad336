"""The cloud learner: datasets, sampling, training."""
