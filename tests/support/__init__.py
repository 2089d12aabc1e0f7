"""Real parts for the tests: a Kafka broker, SMTP servers, a Schema Registry."""
