"""The T5 family in Flax: network, loss, decoding, sharding and checkpoint conversion.

This package knows nothing of seqio or gin: params in, arrays out.
"""
