"""The domain: pure business rules. Nothing here imports grpc, SQLAlchemy or redis."""
