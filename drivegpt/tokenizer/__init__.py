"""VQ tokenizer: camera frames <-> discrete tokens.

Public surface:
    Tokenizer, load_tokenizer, save_tokenizer, TokenizerInputError
"""

from drivegpt.tokenizer.model import Tokenizer, TokenizerInputError, load_tokenizer, save_tokenizer

__all__ = ["Tokenizer", "TokenizerInputError", "load_tokenizer", "save_tokenizer"]
