"""Sharded datasets: format, storage, epoch plan, streaming reader, generators and converters."""
