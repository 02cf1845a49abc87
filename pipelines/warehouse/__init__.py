"""The warehouse: migrations, normalisation of API records, and the change-aware bulk writer."""
