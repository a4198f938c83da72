"""Masks as values, global top-k selection and the N:M pattern."""
