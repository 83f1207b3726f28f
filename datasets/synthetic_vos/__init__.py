"""The built-in synthetic VOS dataset; importing this package registers `synthetic_vos`."""
from datasets.synthetic_vos.builder import SyntheticVos
from datasets.synthetic_vos.builder import SyntheticVosConfig

__all__ = ["SyntheticVos", "SyntheticVosConfig"]
