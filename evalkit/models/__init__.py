"""Model families that several methods build on (e.g. the 4DGS backbone that ``4dgs`` and
``4dgs-cc`` share). A method imports from here, never from another method's package."""
