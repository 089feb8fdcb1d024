"""Tests of augment.models.embedded: the build of the shipped tiny-digits models."""
