"""Typed errors. Each message names the bad value and says what to do about it."""


class HfFisherError(ValueError):
    """Base class for every error hf-fisher raises on bad input."""


class ModelLoadError(HfFisherError):
    """A model id, path or module could not be turned into a classifier."""


class NotAClassifierError(HfFisherError):
    """The model does not map inputs to a (N, K) logits tensor with K >= 2."""


class InputError(HfFisherError):
    """Inputs are empty, non-finite or of the wrong shape for the model."""


class DatasetError(HfFisherError):
    """A dataset, split or column could not be used."""


class ResultsError(HfFisherError):
    """A results file is missing fields, has the wrong schema version or cannot be resumed."""


class SubmissionError(ResultsError):
    """A leaderboard submission is invalid; the message names the file, the field and the fix."""
