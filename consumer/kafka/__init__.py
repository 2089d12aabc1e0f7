"""Kafka-side concerns shared by the commands and services: ACLs, permission checks, client logs."""
