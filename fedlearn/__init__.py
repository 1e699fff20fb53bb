"""fedlearn: privacy-preserving federated learning on Flower."""

from fedlearn.config import RunConfig
from fedlearn.data import Dataset
from fedlearn.history import History, RoundRecord

__all__ = ["Dataset", "History", "RoundRecord", "RunConfig"]
__version__ = "0.1.0"
