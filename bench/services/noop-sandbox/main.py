def run(inputs):
    return None
