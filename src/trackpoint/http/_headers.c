/* Which header an edge connection keeps, in C: the compiled build's native step for
 * trackpoint.http.connection.HeaderNames.canonical, which keeps its pure-Python code as the reference
 * (tests/test_http_connection.py checks the two give the same answer).
 *
 *     canonical(name: bytes, kept: tuple[bytes, ...]) -> bytes
 *
 * `kept` are the lower-case names kept; the answer is the kept name that `name` spells in any case (ASCII letters
 * only, as bytes.lower()), or b"" for a name not kept.
 *
 * Why by hand: the header name is a new bytes object for every header of every request, so the Python way (a dict
 * of the spellings met) hashes it each time: about 450 instructions a header, where comparing it with a dozen kept
 * names of the same length takes a few dozen.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static PyObject *
canonical(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2 || !PyBytes_CheckExact(args[0]) || !PyTuple_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "canonical(name: bytes, kept: tuple[bytes, ...])");
        return NULL;
    }
    const unsigned char *name = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    PyObject *kept = args[1];
    Py_ssize_t count = PyTuple_GET_SIZE(kept);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *candidate = PyTuple_GET_ITEM(kept, i);
        if (!PyBytes_CheckExact(candidate)) {
            PyErr_SetString(PyExc_TypeError, "canonical(): kept names are bytes");
            return NULL;
        }
        if (PyBytes_GET_SIZE(candidate) != size) {
            continue;
        }
        const unsigned char *lower = (const unsigned char *)PyBytes_AS_STRING(candidate);
        Py_ssize_t j = 0;
        for (; j < size; j++) {
            unsigned char c = name[j];
            if (c >= 'A' && c <= 'Z') {
                c += 'a' - 'A';
            }
            if (c != lower[j]) {
                break;
            }
        }
        if (j == size) {
            return Py_NewRef(candidate);
        }
    }
    return PyBytes_FromStringAndSize(NULL, 0); /* the empty bytes object, shared */
}

static PyMethodDef methods[] = {
    {"canonical", (PyCFunction)(void (*)(void))canonical, METH_FASTCALL,
     "The kept lower-case name a header name spells, or b\"\": canonical(name, kept) -> bytes."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "trackpoint.http._headers",
    .m_doc = "Which header an edge connection keeps, in C (the compiled build's HeaderNames).",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__headers(void)
{
    return PyModuleDef_Init(&module);
}
