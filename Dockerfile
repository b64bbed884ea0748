# The operator's image: one static binary and nothing else — no shell, no package manager, no
# libc. Bitbucket Cloud's CA roots are compiled into the binary (webpki-roots); a private CA
# comes from the integration's caBundleSecretRef. Nothing is pulled: the base is `scratch`.
#
# `make image` builds the static (musl) release binary into target/image/ first, then this file
# with buildah, or with docker where there is no buildah:
#   make image                        # bitbucket-operator:0.1.0
#   docker build -t bitbucket-operator:0.1.0 .   # after `make image-binary`
FROM scratch
# Where the binary is in the build context (hack/image.sh passes BBO_IMAGE_DIR's).
ARG BINARY=target/image/bitbucket-operator
COPY ${BINARY} /bitbucket-operator
# The unprivileged user of distroless images; deploy/deployment.yaml runs as it too.
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["/bitbucket-operator"]
CMD ["run"]
