"""Alembic environment: the URL comes from NeuralOps settings (or the caller), never a file."""

from alembic import context

from neuralops.db import get_engine
from neuralops.db.models import Base

config = context.config
url = config.attributes.get("url")

with get_engine(url).connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER in place
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
