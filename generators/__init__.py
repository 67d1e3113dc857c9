"""Generation: the Llama-style Generator, samplers, beam search and their command lines."""

from generators.beam_search import Hypothesis, beam_search
from generators.generation import Generator

__all__ = ["Generator", "Hypothesis", "beam_search"]
