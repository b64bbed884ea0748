# Multi-stage build of the operator image: a static-enough Rust binary on distroless.
#   docker build -t bitbucket-operator:0.1.0 .
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY testdata ./testdata
RUN cargo build --release --locked --bin bitbucket-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/bitbucket-operator /usr/local/bin/bitbucket-operator
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/bitbucket-operator"]
CMD ["run"]
