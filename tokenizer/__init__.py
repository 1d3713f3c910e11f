"""Visual tokenizers for BEiT targets: DALL-E's dVAE encoder, safe weight loading and conversion."""
from tokenizer.base import TokenizerError, VisualTokenizer
from tokenizer.dalle import DalleTokenizer, load_tokenizer
from tokenizer.weights import EncoderWeights, convert_tokenizer, load_encoder, save_encoder, seeded_encoder

__all__ = ["DalleTokenizer", "EncoderWeights", "TokenizerError", "VisualTokenizer", "convert_tokenizer",
           "load_encoder", "load_tokenizer", "save_encoder", "seeded_encoder"]
