# Multi-stage build of the operator image: a static-enough Rust binary on distroless.
#   docker build -t bitbucket-operator:0.1.0 .
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# Loading Cargo.toml needs every package and target it names, though this build compiles only
# the operator's library and binary: the Bitbucket simulator (a workspace member, also needed to
# check Cargo.lock) and the benchmark get empty files in place of their sources. The simulator is
# only a dev-dependency of the operator, so neither it nor the recorded Bitbucket responses in
# testdata/ (which only the simulator and the operator's unit tests embed) reach the build or
# the image.
COPY crates/bitbucket-sim/Cargo.toml ./crates/bitbucket-sim/
RUN mkdir -p crates/bitbucket-sim/src benches \
 && touch crates/bitbucket-sim/src/lib.rs benches/operator.rs
COPY src ./src
RUN cargo build --release --locked -p bitbucket-operator --bin bitbucket-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/bitbucket-operator /usr/local/bin/bitbucket-operator
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/bitbucket-operator"]
CMD ["run"]
