"""Real servers that stand in for the service's peers in tests, each on 127.0.0.1 in its
own thread, one module a fake: a mail relay (`smtp`), a webhook receiver (`webhook`), an
identity provider's JWKS endpoint (`jwks`), an OpenTelemetry collector (`otlp`) and Twilio
(`twilio`). They record what reaches them and answer as the test scripts. The HTTP ones
share one threaded server (`server`); `tls` makes certificates for the TLS ones."""
