"""fedlearn: privacy-preserving federated learning on Flower."""

from fedlearn.config import RunConfig
from fedlearn.data import Dataset
from fedlearn.federation import Federation
from fedlearn.history import History, RoundRecord

__all__ = ["Dataset", "Federation", "History", "RoundRecord", "RunConfig"]
__version__ = "0.1.0"
