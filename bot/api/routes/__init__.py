"""The API's route groups."""
