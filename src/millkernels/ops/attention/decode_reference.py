"""Import path kept for the paged-decode reference, which lives in :mod:`.reference`."""

from millkernels.ops.attention.reference import attention_decode_reference, gather_kv

__all__ = ["attention_decode_reference", "gather_kv"]
