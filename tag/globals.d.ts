// Set by the build (esbuild --define) from package.json's version.
declare const TP_VERSION: string;
