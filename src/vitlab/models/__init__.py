"""One file per paper. Every module here registers its variants on import (see vitlab.registry)."""
