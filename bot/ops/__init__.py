"""Operations: logs, metrics and health, graceful shutdown, the doctor."""
